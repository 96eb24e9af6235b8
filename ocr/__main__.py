from .cli import ocr_command

ocr_command(prog_name="python -m ocr")
