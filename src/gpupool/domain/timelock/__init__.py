"""Proof of Time-Lock: the pure rules that turn an agent's signed sample chains into a
certificate of what each leased device did between T1 and T2.

    samples      the sample format, parsed and validated, and its exact dict for hashing
    chain        whether a posted batch continues a device's chain (refusal codes)
    coverage     how much of the lease window the accepted samples vouch for
    telemetry    plausibility rules per device model (flags)
    anomaly      per-model feature statistics from priors, learned online; the anomaly score
    payout       what violations, telemetry flags and the anomaly cost of a device's pay
    certificate  violations, the verdict, the payout fraction and the certificate body
    offline      re-verification of a certificate from its samples

Hashes and signatures are computed by the caller and passed in as values; nothing here reads
a clock. See docs/timelock.md.
"""
