"""The Rockchip SoCs rknn builds for: what each computes, and the NPU clock its cycle estimate is read at."""

from __future__ import annotations

from dataclasses import dataclass

PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1106", "rv1103", "rv1126b")
DEFAULT_PLATFORM = "rk3588"
INT8_ONLY = frozenset({"rv1106", "rv1103"})  # the toolkit refuses do_quantization=False for these
QUANT_ALGORITHMS = ("normal", "mmse", "kl_divergence")  # 'gdq' exists only for w4a16/w8a16
MAX_OPSET = 19  # the toolkit's ONNX loader


@dataclass(frozen=True)
class NpuClock:
    mhz: float
    source: str

    def milliseconds(self, cycles: int) -> float:
        return cycles / (self.mhz * 1e3)


# The clock the cycle estimate is converted at: the NPU's top operating point.
# RK3588: Rockchip's kernel device tree (rk3588s.dtsi, npu-opp-table) tops out at 1 GHz, and its
# rockchip,init-freq is 1 GHz. For the others we found no primary source and assume the family's
# 1 GHz top OPP (RK3576: 950 MHz); the figure's detail says which.
NPU_CLOCKS: dict[str, NpuClock] = {
    "rk3588": NpuClock(1000, "top NPU OPP in Rockchip's rk3588s.dtsi"),
    "rk3576": NpuClock(950, "assumed top NPU OPP"),
    "rk3568": NpuClock(1000, "assumed top NPU OPP"),
    "rk3566": NpuClock(1000, "assumed top NPU OPP"),
    "rk3562": NpuClock(1000, "assumed top NPU OPP"),
    "rv1106": NpuClock(1000, "assumed top NPU OPP"),
    "rv1103": NpuClock(1000, "assumed top NPU OPP"),
    "rv1126b": NpuClock(1000, "assumed top NPU OPP"),
}

