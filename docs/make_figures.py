"""The figures of docs/structural.md (`python docs/make_figures.py`; needs matplotlib, the
`docs` extra): a simulated bridge's averaged spectrum with the modes the agent picks, and its
tracked modes over a day with the damage the `freq_shift` rule sees."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge_agent.kernels.features import (  # noqa: E402
    SpectrumSettings,
    WindowAccumulator,
    averaged_spectrum,
    spectral_peaks,
)
from simulators.signals import Damage, SimSensor, Structure, build_model  # noqa: E402

OUT = Path(__file__).with_name("structural_spectrum.png")
T0 = 1_728_316_800_000  # 2024-10-08 00:00 local time
RATE = 100.0


def main() -> None:
    sensor = SimSensor("DOC-A", "bridge.accel", "doc-span", RATE)
    model = build_model(sensor, T0, 1515, [Structure(0.0, first_hz=10.8), Damage(16 * 3600.0,
                                                                                  drop_pct=3.0)])
    settings = SpectrumSettings(enabled=True)
    minute = model.render(int(8 * 3600 * RATE), int(60 * RATE))  # morning traffic
    spectrum = averaged_spectrum(minute, RATE, settings)
    assert spectrum is not None
    freqs = np.arange(len(spectrum.psd)) * spectrum.bin_hz
    band = settings.band(RATE, spectrum.bin_hz)
    peaks = spectral_peaks(spectrum, band, settings, 2 * settings.modes)
    acc = WindowAccumulator(1, spectra=[settings], sample_rate_hz=RATE)
    hours, tracked = [], []
    for w in range(0, 24 * 60, 5):
        x = model.render(int(w * 60 * RATE), int(60 * RATE))
        acc.add(x, np.array([0], np.int32), np.array([0, len(x)]))
        f = acc.take(duration_ms=60_000)
        hours.append(w / 60)
        tracked.append([f.modes[f"f{m}"][0] for m in (1, 2, 3)])
    tracked_a = np.array(tracked)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.semilogy(freqs, spectrum.psd, lw=0.8, color="0.3", label="Welch PSD (10.24 s segments)")
    left.axvspan(*band, color="tab:blue", alpha=0.06, label=f"band {band[0]:.1f}-{band[1]:.0f} Hz")
    for p in peaks:
        left.plot(p.f_hz, 10 ** p.log_power, "v", color="tab:red", ms=7)
        left.annotate(f"{p.f_hz:.2f} Hz", (p.f_hz, 10 ** p.log_power), textcoords="offset points",
                      xytext=(4, 6), fontsize=8)
    left.set(xlabel="frequency (Hz)", ylabel="PSD ((m/s2)^2/Hz)", xlim=(0, 50),
             title="One 60 s window at 08:00 (100 Hz deck accelerometer)")
    left.legend(fontsize=8, loc="upper right")
    for m, colour in zip(range(3), ("tab:red", "tab:green", "tab:purple")):
        right.plot(hours, tracked_a[:, m] / np.nanmedian(tracked_a[:60, m]), ".", ms=3,
                   color=colour, label=f"mode {m + 1} (f{m + 1})")
    right.axvline(16, color="k", lw=0.8, ls="--")
    right.annotate("stiffness loss: -3 %", (16, 0.975), xytext=(16.3, 0.972), fontsize=8)
    right.set(xlabel="hour of day", ylabel="frequency / its night-time value", xlim=(0, 24),
              title="Tracked modes: temperature swing, then damage")
    right.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
