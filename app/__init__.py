"""The page and the HTTP API of the tour guide."""

import os

# No phoning home from an offline app: Gradio reads this when it is first imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
