"""llmstudy command line. Heavy imports (torch, transformers) live inside the commands that need them."""
import click


@click.group()
def main():
    """Study kit for week 1 of 'Generative AI with Large Language Models'."""


if __name__ == "__main__":
    main()
