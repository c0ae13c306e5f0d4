from detente.cli import app

app(prog_name="detente")
