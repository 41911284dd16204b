"""What users see: texts, embeds, and the job buttons with the views that carry them.

- `render.py`: the text and embeds of progress, results, `/info`, `/quota` and `/usage`;
- `buttons.py`: the job buttons (Upscale, Vary, Reroll, Delete, Cancel), what a result of
  each kind offers, and the views posted under progress and results.

Both the Discord surface and the job service use these; neither is imported from here.
"""

__all__: list[str] = []
