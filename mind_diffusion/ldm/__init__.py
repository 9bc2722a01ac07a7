"""Latent diffusion (Wukong-Huahua / SD-v1 architecture)."""
