"""The Gradio page: inputs, per-factor switches and strengths, checkpoint, result videos.

Callbacks are thin: they hand the form to :class:`pdfgc.app.service.GenerationService` and turn
its :class:`~pdfgc.errors.PdfgcError` into a ``gr.Error`` (a red message in the page, no stack
trace). Any other exception is logged on the server with its traceback and shown in the page as
one line. Element ids (``elem_id``) are stable: the browser test and the README rely on them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry: the app runs offline

import gradio as gr  # noqa: E402

from pdfgc.errors import PdfgcError  # noqa: E402
from pdfgc.generation import CONTROLS  # noqa: E402

from .examples import Examples  # noqa: E402
from .service import CONTROL_LABELS, Form, GenerationService  # noqa: E402
from .validation import check_portrait, check_upload  # noqa: E402

log = logging.getLogger(__name__)

#: Shown while the checkpoint is the random-weights one.
RANDOM_WEIGHTS_NOTICE = ("**Random weights.** No trained checkpoint was found, so this is the small "
                         "network with untrained, random weights: the video shows a grey blur, not a face. "
                         "Run `make demo` to train one on SynthTalk (it is picked up on the next "
                         "start), or enter the folder of an exported stage or of the official files.")


@dataclass
class CheckpointChoice:
    """One entry of the checkpoint list."""

    label: str
    path: Path
    random_weights: bool = False


INTRO = """# PD-FGC: fine-grained controllable talking heads
One portrait and a speech clip make a talking head: the lips follow the audio, while head pose,
gaze & blink and emotion each come from their own driver video. Switch every factor on or off and
set its strength. Built-in SynthTalk examples are below the form."""


def _error(exc: BaseException) -> gr.Error:
    """A message for the page: a PdfgcError's own line, otherwise a generic one (logged)."""
    if isinstance(exc, PdfgcError):
        return gr.Error(str(exc), duration=None)
    log.error("generation failed", exc_info=exc)
    return gr.Error(f"generation failed unexpectedly ({type(exc).__name__}); see the server log",
                    duration=None)


def make_callbacks(service: GenerationService, choices: list[CheckpointChoice]):
    """The page's callbacks as plain functions (unit-tested without a browser)."""
    random_paths = {str(c.path) for c in choices if c.random_weights}

    def preview_portrait(path: Optional[str]):
        """Portrait upload -> its image for the preview; an unreadable file is an error in the page."""
        if not path:
            return None
        try:
            return check_portrait(check_upload(path, "portrait", service.settings.max_upload_bytes))
        except PdfgcError as exc:
            raise _error(exc) from None

    def checkpoint_notice(checkpoints: Optional[str]):
        """The random-weights notice, visible only while that checkpoint is chosen."""
        random = str(checkpoints or "") in random_paths
        return gr.update(value=RANDOM_WEIGHTS_NOTICE if random else "", visible=random)

    def generate(portrait, audio, pose, expression, eye, controls, mouth_scale, eye_scale,
                 emotion_scale, strip, checkpoints, networks, progress=gr.Progress()):
        """The Generate button: -> (video, strip video or None, files to download, summary)."""
        form = Form(portrait=portrait, audio=audio, pose=pose, expression=expression, eye=eye,
                    controls=list(controls or []), mouth_scale=mouth_scale, eye_scale=eye_scale,
                    emotion_scale=emotion_scale, strip=bool(strip), checkpoints=checkpoints or "",
                    networks=networks or "official")
        try:
            outcome = service.run(form, lambda fraction, desc: progress(fraction, desc=desc))
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line in the page
            raise _error(exc) from None
        files = [str(outcome.video)] + ([str(outcome.strip)] if outcome.strip else [])
        summary = outcome.summary
        if str(checkpoints) in random_paths:
            summary += " (random weights: untrained output)"
        strip_video = gr.update(value=str(outcome.strip) if outcome.strip else None, visible=bool(outcome.strip))
        return str(outcome.video), strip_video, files, summary

    return preview_portrait, checkpoint_notice, generate


def build_app(service: GenerationService, choices: list[CheckpointChoice],
              examples: Optional[Examples] = None, networks_default: str = "official") -> gr.Blocks:
    """The whole page. ``choices[0]`` is the checkpoint selected at start; ``networks_default`` the
    network size chosen for folders without networks.yaml."""
    preview_portrait, checkpoint_notice, generate = make_callbacks(service, choices)
    limit = f"{service.settings.max_upload_mb:g} MB"
    # delete_cache: Gradio's copies of uploads and results older than an hour go every 30 min
    with gr.Blocks(title="PD-FGC talking heads", delete_cache=(1800, 3600), analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                portrait = gr.File(label=f"Portrait (image, up to {limit})", file_types=["image"],
                                   type="filepath", elem_id="portrait")
                preview = gr.Image(label="Portrait preview", interactive=False, height=180,
                                   elem_id="portrait-preview")
                audio = gr.Audio(label=f"Speech (up to {service.settings.max_audio_seconds:g} s)",
                                 type="filepath", sources=["upload"], elem_id="audio")
            with gr.Column(scale=1):
                pose = gr.Video(label="Head-pose driver", sources=["upload"], height=200, elem_id="pose-driver")
                expression = gr.Video(label="Expression (emotion) driver", sources=["upload"], height=200,
                                      elem_id="expression-driver")
                eye = gr.Video(label="Eye (gaze & blink) driver", sources=["upload"], height=200,
                               elem_id="eye-driver")
            with gr.Column(scale=1):
                controls = gr.CheckboxGroup(
                    choices=[(CONTROL_LABELS[c], c) for c in CONTROLS], value=list(CONTROLS),
                    label="Factors (off: that code is zero)", elem_id="controls")
                mouth_scale = gr.Slider(0.0, 3.0, value=1.5, step=0.1, label="Mouth strength",
                                        elem_id="mouth-scale")
                eye_scale = gr.Slider(0.0, 3.0, value=1.2, step=0.1, label="Eye strength", elem_id="eye-scale")
                emotion_scale = gr.Slider(0.0, 3.0, value=1.2, step=0.1, label="Emotion strength",
                                          elem_id="emotion-scale")
                strip = gr.Checkbox(value=False, label="Also make the side-by-side strip "
                                    "(portrait | generated | pose | expression | eye)", elem_id="strip")
                with gr.Accordion("Checkpoint", open=True):
                    checkpoint = gr.Dropdown(
                        choices=[(c.label, str(c.path)) for c in choices],
                        value=str(choices[0].path) if choices else None, allow_custom_value=True,
                        label="Checkpoint folder (the official four files or an exported stage)",
                        elem_id="checkpoint")
                    networks = gr.Radio(["official", "small"], value=networks_default,
                                        label="Network size, for a folder without networks.yaml",
                                        elem_id="networks")
                    notice = gr.Markdown(elem_id="checkpoint-notice", **_notice_state(choices))
                button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            result = gr.Video(label="Result", interactive=False, height=320, elem_id="result")
            strip_video = gr.Video(label="Strip: portrait | generated | pose | expression | eye",
                                   interactive=False, visible=False, height=320, elem_id="strip-video")
        with gr.Row():
            downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="downloads")
            summary = gr.Textbox(label="Summary", interactive=False, elem_id="summary")
        if examples is not None:
            gr.Examples(
                examples=[[str(examples.portrait), str(examples.audio), str(examples.pose),
                           str(examples.expression), str(examples.eye)]],
                inputs=[portrait, audio, pose, expression, eye],
                label="Built-in SynthTalk example (a held-out speaker and three other ones as drivers)")

        # queued (its error then shows as a message) but never behind a running generation
        portrait.change(preview_portrait, portrait, preview, concurrency_limit=None, show_progress="minimal")
        checkpoint.change(checkpoint_notice, checkpoint, notice, queue=False)
        button.click(generate, [portrait, audio, pose, expression, eye, controls, mouth_scale, eye_scale,
                                emotion_scale, strip, checkpoint, networks],
                     [result, strip_video, downloads, summary], concurrency_limit=1)
    return demo


def _notice_state(choices: list[CheckpointChoice]) -> dict:
    random = bool(choices) and choices[0].random_weights
    return {"value": RANDOM_WEIGHTS_NOTICE if random else "", "visible": random}
