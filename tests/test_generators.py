"""Generators of the synthetic probe tasks: reproducible, right shapes and units, physically sensible, not trivial."""

import time
import tracemalloc

import numpy as np
import pytest
from scipy import signal

from data_catalog.baseline import baseline_features, baseline_score
from data_catalog.generators import CORPUS_GENERATORS, GENERATORS, coloured_noise, generate, resolve_options
from data_catalog.generators import gravitational_waves, motor_imagery, seismograms

PROBE_TASKS = [name for name, spec in GENERATORS.items() if spec.class_names]
TASK_GENERATORS = [name for name in GENERATORS if name not in CORPUS_GENERATORS]  # the corpus's: tests/test_corpus.py
SMALL = {"long_records": {"length": 50_000}}  # keep the long record short in the fast tests


def test_registry_declares_the_seven_tasks_and_the_long_set():
    expected = {  # name: (sampling rate Hz, channels, unit, number of classes)
        "gravitational_waves": (4096.0, 1, "strain", 2),
        "light_curves": (1 / 1800, 1, "e-/s", 5),
        "seismograms": (100.0, 3, "counts", 2),
        "marmoset_calls": (16000.0, 1, "Pa", 4),
        "sleep_eeg": (100.0, 1, "V", 5),
        "motor_imagery": (250.0, 16, "V", 3),
        "radar_pulses": (2e6, 2, "V", 5),
        "long_records": (100.0, 1, "counts", 0),
    }
    actual = {name: (s.sampling_rate, s.channels, s.unit, len(s.class_names)) for name, s in GENERATORS.items()
              if name in TASK_GENERATORS}
    assert actual == expected
    assert {"C3", "Cz", "C4"} <= set(motor_imagery.CHANNEL_NAMES)
    assert len(motor_imagery.CHANNEL_NAMES) == GENERATORS["motor_imagery"].channels


@pytest.mark.parametrize("name", TASK_GENERATORS)
def test_items_are_reproducible_shaped_float32_and_finite(name):
    spec = GENERATORS[name]
    options = SMALL.get(name)
    values, label = generate(name, 3, seed=11, options=options)
    again, _ = generate(name, 3, seed=11, options=options)
    other_seed, _ = generate(name, 3, seed=12, options=options)
    assert values.dtype == np.float32 and values.ndim == 2 and values.shape[0] == spec.channels
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values, again)
    assert other_seed.shape != values.shape or not np.array_equal(other_seed, values)
    assert label == (3 % len(spec.class_names) if spec.class_names else -1)


def test_default_lengths():
    lengths = {name: generate(name, 0, 0, SMALL.get(name))[0].shape[1] for name in TASK_GENERATORS}
    assert lengths == {"gravitational_waves": 16384, "seismograms": 6000, "marmoset_calls": 16000, "sleep_eeg": 3000,
                       "motor_imagery": 1000, "radar_pulses": 1024, "long_records": 50_000,
                       "light_curves": lengths["light_curves"]}
    light_curve_lengths = {generate("light_curves", i, 0)[0].shape[1] for i in range(10)}
    assert len(light_curve_lengths) > 5 and all(400 <= n <= 2000 for n in light_curve_lengths)


@pytest.mark.parametrize("name", PROBE_TASKS)
def test_labels_are_balanced(name):
    n_classes = len(GENERATORS[name].class_names)
    labels = [generate(name, i, 0)[1] for i in range(2 * n_classes)]
    assert np.bincount(labels).tolist() == [2] * n_classes


# physical scale of each task's values: (statistic, low, high) over a few items
SCALES = {
    "gravitational_waves": (np.std, 1e-22, 1e-20),  # strain
    "light_curves": (np.median, 3e3, 3e4),  # e-/s
    "seismograms": (np.std, 1e2, 1e6),  # counts
    "marmoset_calls": (np.std, 1e-3, 1e-1),  # Pa
    "sleep_eeg": (np.std, 1e-6, 1e-4),  # V
    "motor_imagery": (np.std, 1e-6, 1e-4),  # V
    "radar_pulses": (np.std, 1e-3, 1.0),  # V
    "long_records": (np.std, 1e1, 1e6),  # counts
}


@pytest.mark.parametrize("name", TASK_GENERATORS)
def test_values_have_the_physical_scale_of_their_unit(name):
    statistic, low, high = SCALES[name]
    for index in range(6):
        value = statistic(generate(name, index, 0, SMALL.get(name))[0].astype(np.float64))
        assert low <= value <= high, f"{name} item {index}: {value:.3g} outside [{low:g}, {high:g}]"


def test_unknown_option_and_unknown_generator_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"seismograms.*snr_range"):
        generate("seismograms", 0, 0, {"snr_range": (1, 2)})
    with pytest.raises(ValueError, match="no_such_task"):
        generate("no_such_task", 0, 0)


def test_options_from_yaml_lists_behave_like_tuples():
    as_tuple, _ = generate("gravitational_waves", 1, 0, {"snr_range": (10.0, 12.0)})
    as_list, _ = generate("gravitational_waves", 1, 0, {"snr_range": [10.0, 12.0]})
    np.testing.assert_array_equal(as_tuple, as_list)
    assert resolve_options("radar_pulses", {"length": 512})["length"] == 512


def test_gravitational_wave_noise_whitens_to_unit_variance():
    """The SNR scaling relies on `whiten` matching the PSD the noise was drawn from."""
    rng = np.random.default_rng(0)
    options = GENERATORS["gravitational_waves"].default_options
    frequencies = np.fft.rfftfreq(16384, 1 / gravitational_waves.SAMPLING_RATE)
    psd = gravitational_waves.detector_psd(frequencies, rng, options)
    noise = coloured_noise(rng, np.sqrt(psd * gravitational_waves.SAMPLING_RATE / 2), 16384)
    assert 0.95 < gravitational_waves.whiten(noise, psd).std() < 1.05


def test_chirp_frequency_and_amplitude_rise():
    """Spectral centroid and amplitude of the inspiral grow from the early to the late part of the chirp."""
    options = {**GENERATORS["gravitational_waves"].default_options, "chirp_mass_range": (10.0, 10.0)}
    chirp = gravitational_waves.inspiral_chirp(np.random.default_rng(0), 16384, options)
    f, _, power = signal.spectrogram(chirp, fs=gravitational_waves.SAMPLING_RATE, nperseg=256, noverlap=128)
    sounding = np.flatnonzero(power.sum(axis=0) > 0)
    centroid = (f[:, None] * power[:, sounding]).sum(axis=0) / power[:, sounding].sum(axis=0)
    third = sounding.size // 3
    assert third >= 3
    assert centroid[-third:].mean() > 1.5 * centroid[:third].mean()
    assert np.all(np.diff(centroid[: 2 * third]) > -5.0)  # rising (up to spectral leakage) through the inspiral
    assert power[:, sounding[-third:]].sum() > 2 * power[:, sounding[:third]].sum()


def test_earthquake_p_is_strongest_on_vertical_and_s_on_horizontals():
    rng = np.random.default_rng(5)
    p_onset_s, distance_km = 10.0, 100.0
    s_onset_s = p_onset_s + distance_km * seismograms.S_MINUS_P_PER_KM
    z, n, e = seismograms.earthquake(rng, 6000, p_onset_s, distance_km) ** 2  # energies per sample
    before_p = slice(0, int(p_onset_s * 100))
    p_window = slice(int(p_onset_s * 100), int(s_onset_s * 100))
    s_window = slice(int(s_onset_s * 100), int((s_onset_s + 3) * 100))
    assert z[before_p].sum() == 0
    assert z[p_window].sum() > n[p_window].sum() + e[p_window].sum()
    assert n[s_window].sum() + e[s_window].sum() > z[s_window].sum()


def test_light_curve_noise_is_photon_noise_at_least():
    """Poisson counts over a 1800 s cadence: point-to-point scatter is at least sqrt(F / 1800) e-/s."""
    quiet = {"jitter_range": (1e-9, 1e-9), "red_noise_range": (1e-9, 1e-9)}
    flux = generate("light_curves", 0, 0, quiet)[0][0].astype(np.float64)  # label 0: constant star
    photon_noise = np.sqrt(np.median(flux) / 1800)
    assert 0.8 < np.diff(flux).std() / np.sqrt(2) / photon_noise < 1.3


def test_sleep_stages_differ_in_delta_and_alpha_power():
    def relative_power(stage, low, high):
        powers = []
        for index in range(stage, 5 * 8, 5):  # 8 epochs of this stage
            f, psd = signal.welch(generate("sleep_eeg", index, 0)[0][0], fs=100.0, nperseg=512)
            powers.append(psd[(f >= low) & (f < high)].sum() / psd[(f >= 0.5) & (f < 30)].sum())
        return np.mean(powers)

    wake, deep = 0, 3
    assert relative_power(deep, 0.5, 2.0) > 2 * relative_power(wake, 0.5, 2.0)
    assert relative_power(wake, 8.0, 12.0) > 2 * relative_power(deep, 8.0, 12.0)


def test_motor_imagery_desynchronises_the_hemisphere_opposite_the_hand():
    c3, c4 = motor_imagery.CHANNEL_NAMES.index("C3"), motor_imagery.CHANNEL_NAMES.index("C4")

    def mean_c4_over_c3_mu_power(hand):
        ratios = []
        for index in range(hand, 3 * 12, 3):  # 12 trials of this class
            values = generate("motor_imagery", index, 0, {"erd_depth_range": (0.6, 0.6)})[0][:, 500:]  # late 2 s
            f, psd = signal.welch(values.astype(np.float64), fs=250.0, nperseg=250, axis=-1)
            mu = (f >= 8) & (f <= 13)
            ratios.append(np.log(psd[c4, mu].sum() / psd[c3, mu].sum()))
        return np.mean(ratios)

    left_hand, right_hand = 0, 1
    assert mean_c4_over_c3_mu_power(left_hand) < mean_c4_over_c3_mu_power(right_hand) - 0.2


def test_long_record_streams_within_three_times_its_own_memory():
    tracemalloc.start()
    values, label = generate("long_records", 0, 0, {"length": 2_000_000})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert values.shape == (1, 2_000_000) and label == -1
    assert peak < 3 * values.nbytes
    # continuous: no jumps at the block seams (largest step well below the record's spread)
    assert np.abs(np.diff(values[0])).max() < 10 * values.std()


@pytest.mark.parametrize("name", [n for n in PROBE_TASKS if n != "light_curves"])
def test_short_items_generate_fast(name):
    generate(name, 0, 0)  # warm up
    start = time.perf_counter()
    for index in range(5):
        generate(name, index, 0)
    assert (time.perf_counter() - start) / 5 < 0.1  # target ~20 ms; generous against a loaded machine


def test_baseline_features_have_fixed_size_and_survive_tiny_values():
    short = baseline_features(np.full((2, 300), 1e-21) + 1e-22 * np.random.default_rng(0).standard_normal((2, 300)),
                              4096.0)
    long = baseline_features(np.random.default_rng(1).standard_normal((2, 5000)), 4096.0)
    assert short.shape == long.shape == (2 * 11,)
    assert np.isfinite(short).all()


@pytest.mark.parametrize("name", PROBE_TASKS)
def test_baseline_is_above_chance_and_below_ceiling(name):
    n_classes = len(GENERATORS[name].class_names)
    chance = 0.5 if n_classes == 2 else 1 / n_classes
    score = baseline_score(name, n_train=60, n_test=60, seed=0)
    assert chance + 0.05 < score < 0.95, f"{name}: baseline {score:.3f}"
