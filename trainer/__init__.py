"""The bundled depth trainer: a monocular depth network trained on the manifests and shards the pipeline publishes.

Video batches train it self-supervised by view synthesis, stereo batches by their flow disparity (scale- and
shift-invariant). `config` types the YAML settings; `manifest` reads and filters manifests; `plan` decides
which rows every rank and loader worker reads, batch by batch; `data` streams those batches from the Parquet
shards, decoded and augmented by `augment` (crops, flips, colour jitter, zoom, with intrinsics kept exact);
`geometry` is the camera model and warp; `models` holds the depth and pose networks over timm encoders;
`losses` the photometric and scale-and-shift-invariant losses; `objective` joins networks and losses in
`DepthTraining`, which also loads a trained model from a checkpoint; `metrics` and `evaluate` score
predictions against stereo disparity or rendered depth; `train` is the loop (one process or DDP, resumable
exactly); `checkpoint` reads and writes checkpoint files; `predict` writes depth maps for images and videos;
`cli` is `python -m trainer fit|evaluate|predict|export`.
"""
