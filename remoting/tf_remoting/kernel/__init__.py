"""Code that runs INSIDE the user's kernel: the slice's soft caps and the %vgpu magic."""
