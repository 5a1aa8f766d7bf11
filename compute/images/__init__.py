"""Visual evidence per unit: top/bottom examples, attributions, activation maximisation, rendering to PNG rows."""
