"""Stand-in for PythonQt's ``ctk`` module (Testing only): widget classes by name."""
from widgets import widgetClass


def __getattr__(name: str):
    if name.startswith("ctk"):
        return widgetClass(name)
    raise AttributeError(name)
