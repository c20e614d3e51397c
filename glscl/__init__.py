"""GLSCL (global-local semantic consistent learning) for text-video retrieval, derived step by step in notebooks on open_clip

Modules:

- `glscl.cli`: `glscl` on the command line: every subcommand reads a preset of `settings.ini` through `load_config`, so the shell, the notebooks and the tests agree on every hyperparameter.
- `glscl.clip`: open_clip as the backbone: every token of a caption and every sampled frame of a video as CLIP features, the temporal transformer that lets frames see each other.
- `glscl.config`: One place for every hyperparameter: the sections of `settings.ini`, loaded as a typed `Config`; and the runner that executes the whole course with papermill.
- `glscl.data`: From the annotation files to the batches GLSCL trains on: caption-video pairs, CLIP tokens, datasets that skip and count an unreadable video, and a collate function that pads frames.
- `glscl.datasets`: MSVD, DiDeMo, LSMDC and ActivityNet Captions: readers for their files as the CLIP4Clip family distributes them, one video lookup for every naming scheme, the paper's presets and numbers, and the toy world written in each layout.
- `glscl.efficiency`: GLSCL's claim, "comparable accuracy, nearly 220 times cheaper", measured: the similarity heads the paper compares against, built from their papers' descriptions at ViT-B/32 sizes, counted in FLOPs, parameters, seconds and memory.
- `glscl.framecache`: Every sampled frame of every video decoded once, resized and cropped, and stored in a few large files, so that training reads bytes instead of decoding video.
- `glscl.gim`: A parameter-free, text-conditioned pooling of a video's frames, and the coarse similarity Sim1 for every text-video pair at the cost of one matrix product.
- `glscl.lim`: $K$ learnable queries read a caption's tokens and a video's frames through one shared transformer decoder; the fine similarity Sim2 compares the two sets of query outputs slot by slot.
- `glscl.losses`: The symmetric InfoNCE loss on the training logits, and the inter-consistency loss that asks a query to mean the same thing in a video and in its caption.
- `glscl.metrics`: How a text-video similarity matrix becomes the numbers of a results table, with ties handled fairly, several captions per video, and the two test-time re-rankings (DSL, QB-Norm) kept apart from the plain numbers.
- `glscl.model`: CLIP, the temporal transformer, GIM and the shared LIM put together: a training forward that returns the three losses, and cacheable per-item encodings that rank any number of texts against any number of videos.
- `glscl.search`: `VideoIndex` encodes each video of a folder once, stores what the similarity reads on disk (memory-mapped, optionally float16), and ranks the videos for any text with the model's own similarity, Sim1 + lambda Sim2.
- `glscl.tinyclip`: A CLIP small enough to pretrain on a laptop CPU in minutes, on the toy world's frames, so that every later notebook runs with a backbone that already knows colours, shapes and places.
- `glscl.toyworld`: Procedurally drawn videos with captions, written in MSR-VTT's exact file layout, so the whole method can be learned, run and tested on a laptop CPU with no download.
- `glscl.train`: The loop that turns the GLSCL module into a retrieval model: optimizer groups, the warmup-cosine schedule, evaluation with an on-disk encoding cache, checkpoints that resume bit for bit, and the `glscl train` run.
- `glscl.video`: From a video file to the tensor CLIP's image tower reads: which frames, read by which decoder, resized, cropped, normalised, and augmented the way the released code trains."""

__version__ = "0.0.1"
