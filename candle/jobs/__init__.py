"""Ray jobs: ``ray job submit --working-dir . -- python -m candle.jobs.<job> ...``."""
