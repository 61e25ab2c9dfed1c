"""`python -m banyan.launch_server --model-path PATH [flags]`: SGLang's launch command, the same
server and flags as `banyan serve` (installed as `banyan.launch_server`, see pyproject.toml)."""
