"""The web demo (``python app.py``, ``pdfgc-app``): PD-FGC's per-factor control in a browser.

* :mod:`~pdfgc.app.server` - command line, temporary workspace, launching the Gradio server;
* :mod:`~pdfgc.app.ui` - the Gradio page and its callbacks (errors become a message in the page);
* :mod:`~pdfgc.app.service` - a form -> :class:`pdfgc.generation.GenerationPipeline` -> mp4 files;
* :mod:`~pdfgc.app.validation` - upload checks with one readable line each;
* :mod:`~pdfgc.app.examples` - SynthTalk example inputs and the checkpoint used at start.

Only ``ui`` and ``server`` import Gradio; the rest is testable without it.
"""
