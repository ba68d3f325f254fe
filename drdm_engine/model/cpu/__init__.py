"""Fast CPU layers of the recovery network (:data:`.layer_set.FAST`, which ``model/layer_choice.py``
picks) and the heap policy behind them. Without this folder the engine runs PyTorch's own layers: the
reference path's results, slower on the CPU."""
