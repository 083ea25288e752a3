from sciqa.cli import app

app(prog_name="sciqa")
