"""The CUDA kernels' parameter gradients as accurate as PyTorch's (cases of test_reliability_accuracy.py)."""

import pytest

from conftest import KERNEL_DEVICE, gpu_test
from test_reliability_accuracy import ACCURACY_CASES, check_parameter_gradient_accuracy


@gpu_test
@pytest.mark.parametrize("case", ACCURACY_CASES)
def test_cuda_parameter_gradients_as_accurate_as_pytorch(case):
    check_parameter_gradient_accuracy(case, KERNEL_DEVICE)
