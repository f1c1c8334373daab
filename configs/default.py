"""Base config: the original training script's defaults. Benchmark configs override a few fields."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.family = "pthnet"  # the model family (pthnet_jax.task.FAMILIES): its model, loss and inputs
    config.benchmark = "FERv39k"

    config.model = ml_collections.ConfigDict(dict(
        n_in=1408, n_embd=512, mlp_dim=768, max_len=16, arch=(2, 2, 1, 1), scale_factor=2,
        with_ln=True, path_pdrop=0.1, downsample_type="max", thr_size=(3, 1, 3, 3), k=(1, 3, 5),
        num_classes=0,  # 0: the dataset's class count (from its metadata)
        use_pos=False, num_heads=8))
    config.model_dtype = "float32"  # "bfloat16": compute dtype for throughput-only runs

    config.data = ml_collections.ConfigDict(dict(
        data_dir="",  # set with --data; the directory `pthnet import-features` wrote
        mode="auto",  # "resident" | "streaming" | "auto" (resident when it fits in memory)
        noise_std=0.0005, train_split="train", test_split="test"))

    config.optim = ml_collections.ConfigDict(dict(
        lr=0.005, momentum=0.9, weight_decay=1e-4, milestones=(10, 15, 20, 25), gamma=0.5))

    config.train = ml_collections.ConfigDict(dict(
        epochs=30, global_batch=32, seed=0,
        # Training steps fused into one device call (resident mode, lax.scan); 0 = auto (32).
        steps_per_dispatch=0,
        select_on="test",  # "test": the original's choice (best epoch on the test split); "val"
        select_metric="WAR",  # the original keeps the best WAR
        val_fraction=0.1, val_seed=0,  # held-out part of train when select_on == "val"
        keep_checkpoints=2, eval_every=1,
        parallel_runs=1,  # `pthnet folds`: runs of the protocol trained at a time in one program (vmap)
        # Where those runs sit on several local devices: "inside" (each run's batch split over the
        # devices), "spread" (whole runs per device), "auto" (pthnet_jax.run_placement).
        runs_placement="auto",
        # Runs of one program batched together: 0 = all (one vmap), 1 = one after another (lax.map),
        # w = groups of w; -1 = auto (1 on a CPU, where batching gains nothing and compiles slower; 0 else).
        runs_vmap_width=-1,
        # How the devices' mutable collections (BatchNorm statistics) are combined after a step:
        # "pmean" (mean over devices), "first" (device 0's, as PyTorch's DataParallel), "" (the family's).
        model_state_sync="",
        # Resume a workdir although the config or dataset differs from the saved run (listed).
        allow_resume_change=False,
        # > 0: trace this many training steps (from the start of the second epoch, or of the only
        # one) with jax.profiler into WORKDIR/profile; `pthnet bench` summarises the trace.
        profile_steps=0))

    config.eval = ml_collections.ConfigDict(dict(batch_size=0))  # 0: auto (256 on CPU, 4096 on accelerators)
    return config
