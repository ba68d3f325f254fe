"""Fast CPU layers of the recovery network and the heap policy behind them."""
