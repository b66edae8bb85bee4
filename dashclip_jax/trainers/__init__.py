"""Trainers: stage 1 (ITC + ITM) and stage 2 (QCC), each read top to bottom.

`dashclip_jax.main` picks one by `config.stage`; `final_eval` runs the
evaluation suite on the trained model at the end of the main job.
"""
