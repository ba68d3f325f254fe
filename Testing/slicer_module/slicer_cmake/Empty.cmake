# Stand-in: extension config generation and packaging do nothing here.
