"""gptspec: the command line and shared helpers that sit on top of ref_numpy, weights and ms_backend."""
