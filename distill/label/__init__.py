"""distill.label"""
