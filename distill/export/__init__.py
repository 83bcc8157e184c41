"""distill.export"""
