"""What ``fusedops bench`` and ``fusedops check`` run, shared with the benchmark scripts of the source tree
(``benchmarks/``): the timing harness, the baselines (eager, torch.compile, ONNX Runtime, OpenVINO), the models'
set-up and parity check, the ops' parity check, the bar chart."""
