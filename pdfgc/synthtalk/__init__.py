"""SynthTalk: an embedded talking-face world in which every factor PD-FGC disentangles is known.

Modules:

* ``identity``: speakers (colours, face shape, eye spacing, hair, background, voice), drawn
  from ``(seed, speaker)``;
* ``motion``: head pose, gaze, blink and emotion trajectories, each from its own random stream
  (units and sign conventions in its docstring);
* ``speech``: phoneme-like speech at 16 kHz and the mouth curve it implies (the mouth leads the
  sound by 40 ms);
* ``render``: the anti-aliased pseudo-3-D renderer (aligned frames, before the official crop);
* ``clips``: ``render_clip(seed, speaker, clip, num_frames, image_size) -> Clip`` (frames, audio,
  mel, per-frame ground truth, eye / mouth boxes) and ``draw_factors`` (everything but pixels);
* ``world``: ``WorldConfig`` (speakers, splits by speaker, ``render_clip``/``clips(split)``) and
  the cached ``ClipPool`` the datamodule samples from;
* ``export``: the world on disk, processed layout or mp4 (``python -m pdfgc.synthtalk.export``).
"""
