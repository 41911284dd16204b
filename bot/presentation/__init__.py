"""What users see: texts, embeds, and the job buttons with the views that carry them.

- `render.py`: the text and embeds of progress, results, `/info`, `/models`, `/quota` and
  `/usage` (pure formatting);
- `buttons.py`: the job buttons (Upscale, Vary, Edit, the canvas's, Reroll, Delete, Cancel),
  what a result of each kind offers, and the views posted under progress and results;
- `modals.py`: what the Edit button, Custom Zoom and Vary (Region) ask for before they run.

Both the Discord surface and the jobs use these; neither is imported from here (a press is
handed back to the surface through `services.ServiceHost`).
"""

__all__: list[str] = []
