"""Web demo: ``python app.py [--port 7860] [--checkpoints DIR]`` serves PD-FGC in the browser.

Upload a portrait and speech, pick the driver videos, switch each factor (mouth, blink, gaze,
emotion, head pose) on or off and set its strength; built-in SynthTalk examples work right after
install. ``python app.py --help`` lists the options; the app is :mod:`pdfgc.app`. Bad options
print one ``error: ...`` line and exit 2.
"""

from pdfgc.errors import cli_guard


@cli_guard
def main():
    from pdfgc.app.server import main as serve

    serve()


if __name__ == "__main__":
    main()
