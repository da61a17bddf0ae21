//! `mujin-agent`: the device agent binary (see the library for what it does).

fn main() -> anyhow::Result<()> {
    mujin_device_agent::cli_main(std::env::args_os())
}
