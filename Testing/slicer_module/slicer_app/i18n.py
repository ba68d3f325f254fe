"""Stand-in for ``slicer.i18n`` (Testing only): no translation; calls are recorded."""
calls = []


def translate(context: str, text: str) -> str:
    calls.append((context, text))
    return text


def tr(text: str) -> str:
    return translate("", text)
