"""Training over many GPUs and nodes with torch.distributed: data parallel (DDP), FSDP2 and expert parallelism.

`pmoe train` (and `fit`) under `torchrun` runs one rank per process: `mesh` lays the ranks out in a ("dp", "ep")
DeviceMesh; `expert_parallel` shares each routed layer's experts out over an EP group with fixed-size all-to-alls;
`wrap` and `grads` keep dense and expert weights in step; `data` shards batches and evaluation; `checkpoint` gathers
the one-file checkpoint and keeps the resumable state with torch.distributed.checkpoint; `session` is the rank's part
of `fit`. Only `mesh` is imported by one-process runs (the rest imports DTensor, FSDP2 and DCP).
"""
