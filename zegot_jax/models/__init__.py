"""The ZegOT segmenter: learned prompts, DLFA, MPOT-refined score maps and losses."""
