"""Pictures in and out of the bot.

- `pictures.py`: fetching the picture a member attached (only from Discord, small and quick);
- `store.py`: `ImageStore`, the one owner of image files kept on disk (inputs and results);
- `grid.py`: the 2x2 grid a four-image result is posted as;
- `chart.py`: the `/usage` chart.
"""

__all__: list[str] = []
