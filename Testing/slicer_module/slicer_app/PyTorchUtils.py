"""Stand-in for the PyTorch extension's ``PyTorchUtils`` (Testing only). ``torchInstalled`` imports
torch into the calling process, as the real one does; ``installTorch`` records its arguments."""
calls = []


class PyTorchUtilsLogic:
    def torchInstalled(self) -> bool:
        calls.append(("torchInstalled",))
        import torch  # noqa: F401

        return True

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        calls.append(("installTorch", askConfirmation, torchVersionRequirement))
        return None
