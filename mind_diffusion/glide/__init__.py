"""GLIDE (Taichu-GLIDE / OpenAI glide-text2im) in MindSpore: text transformer, base and
super-resolution UNets, the SRGAN x4 generator, their official checkpoints, GLIDE's sampling
and the three-stage pipeline.

Kept light on purpose (no MindSpore import here); import the sub-modules:

* ``mind_diffusion.glide.config``: ``glide_base_defaults()``, ``glide_sr_defaults()``,
  ``srgan_defaults()``, ``GLIDE_TINY`` (keys base, sr, srgan), ``glide_config_defaults()`` (the
  inference config's schema), ``GLIDE_URL``.
* ``mind_diffusion.glide.model``: ``build_glide_base(cfg)``, ``build_glide_sr(cfg)``, ``build_srgan(cfg)``
  (keyword ``deferred_init=True``: skip the random init when a checkpoint is loaded next; ~1 s
  instead of ~10 s for a full-size UNet on CPU), ``apply_glide_precision(net, dtype)`` (convs /
  Dense in fp16, norms and softmax fp32; add ``timestep_fp16=True`` to the config for Taichu's
  fp16 timestep embedding).
* ``mind_diffusion.glide.unet``: ``GlideText2ImUNet.construct(x, t, tokens, mask)`` and
  ``GlideSuperResUNet.construct(x, t, low_res, tokens, mask)`` -> (B, 6, H, W); x float
  (B,3,H,W), t (B,) timesteps on the original 0..999 scale, tokens / mask int32 (B, text_ctx),
  mask 1 = real token. The SR net resizes low_res inside (legacy bilinear); quantising low_res
  is the sampler's job.
* ``mind_diffusion.glide.srgan``: ``SRGANGenerator(upscale_factor=4, num_blocks=16, channels=64)``.
* ``mind_diffusion.glide.srgan_training``: ``train_srgan(cfg, resume=, overwrite=)`` (L1 + adversarial
  with ``SRGANDiscriminator``, schema ``srgan_train_config_defaults()``, export ``srgan.ckpt`` +
  ``srgan.yaml``), ``evaluate_srgan(gen, ...)`` / ``write_eval(gen, out_dir, ...)`` (PSNR and
  ``edge_sharpness`` against bicubic on held-out shapes scenes), ``load_exported_srgan(dir)``.
* ``mind_diffusion.glide.checkpoint``: ``load_glide_checkpoint(net, path_or_state, kind=None)``
  (kind defaults to the network's), ``save_glide_checkpoint(net, path, kind=None,
  layout='training')`` (the released names, fp16 embeddings), ``openai_key(rel_name)``.
* ``mind_diffusion.glide.diffusion``: learned-range ``p_mean_variance``, the guided ancestral
  base loop (``uncond='random'|'empty'``) and the fast27 DDIM super-resolution loop, numpy-side.
* ``mind_diffusion.glide.pipeline``: ``GlidePipeline.from_pretrained(config, gen, super, srgan,
  tokenizer=...)`` -> ``pipe(prompt, num_images_per_prompt=, seed=, stages=)`` ->
  ``{64: uint8, 256: ..., 1024: ...}``.
"""
