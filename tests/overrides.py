"""Dotted-path overrides of ml_collections configs, as `--config.a.b=value` does."""


def apply_overrides(config, overrides: dict):
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config
