"""The stage layer: the study's stages and the runners that turn folders into results.

Everything below this package (scenes, diffusion, models, train, locality, evaluate, intervene,
adapters, report) takes Denoisers, tensors and typed options; this package alone knows run
folders and the study's config:

- ``config``: ``StudyConfig``, its presets (``locodiff/presets/*.toml``) and loader;
- ``subjects``: the one place that turns a run or an intervention folder into a Denoiser;
- ``evaluation``, ``probe``: evaluate and probe one subject at a checkpoint (cached in its folder);
- ``study``: render, train, evaluate, probe, follow training, report; ``predict``: its cost;
- ``jobs``: running independent jobs side by side, with progress a log can follow.
"""
