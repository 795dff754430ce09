"""Stage workers of the scale-out pipeline (chunk, embed, store) over one base loop. Not built yet."""
