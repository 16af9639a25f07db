from pmoe.cli import console

console()
