# cuDNN's kernels for the 2D 240^2 b32 32->32 3x3 convolution (fprop, dgrad, wgrad), fp32 and TF32:
# names and CUDA times from torch.profiler, after cudnn.benchmark has chosen its algorithms.
import torch
from torch.profiler import profile, ProfilerActivity
torch.backends.cudnn.benchmark = True
x = torch.randn(32, 32, 240, 240, device="cuda", requires_grad=True)
conv = torch.nn.Conv2d(32, 32, 3, padding=1).cuda()
for tf32 in (False, True):
    torch.backends.cudnn.allow_tf32 = tf32
    for _ in range(5):
        y = conv(x); y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            y = conv(x); y.backward(torch.ones_like(y))
        torch.cuda.synchronize()
    print("=== tf32" if tf32 else "=== fp32")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=90))
