"""The shipped experiment configs under configs/, loaded as modules by path (as the
console scripts load them: configs/ is not a package), for tests that check the
claims their docstrings and HARDWARE tables make."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_module(name: str):
    """configs/<name>.py as a module (its get_config, HARDWARE, ...)."""
    spec = importlib.util.spec_from_file_location(f"_config_{name}",
                                                  os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
