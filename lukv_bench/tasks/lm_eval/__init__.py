"""tasks/lm_eval"""
