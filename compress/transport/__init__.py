"""Student-teacher transport: permutations and rotations of a checkpoint's internal spaces that
leave its function unchanged, folded into the weights (apply), and the tools that find them."""
