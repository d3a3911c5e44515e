from moshi_mlx.app.cli import main

if __name__ == "__main__":
    main()
