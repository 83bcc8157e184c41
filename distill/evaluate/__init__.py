"""distill.evaluate"""
