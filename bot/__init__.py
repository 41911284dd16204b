"""imagine-bot: the Discord front end. Depends on `engine`; the engine never imports it."""
