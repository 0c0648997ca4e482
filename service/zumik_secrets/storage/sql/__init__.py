"""What both SQL backends share: the dialect interface and the kernel protocol aggregates use."""
