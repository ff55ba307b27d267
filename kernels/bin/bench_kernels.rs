//! Stand-alone `bench kernels` (the same table as `medqlora bench kernels`), for device runs
//! of the kernel crate alone: `bench_kernels [--quick]`.

fn main() {
    use cubecl::Runtime;
    let quick = std::env::args().any(|a| a == "--quick");
    let device = cubecl::cuda::CudaDevice::new(0);
    let client = cubecl::cuda::CudaRuntime::client(&device);
    // The map's values do not change the timing; any sorted table will do.
    let map = medqlora_kernels::testutil::synthetic_map();
    let (shapes, ms): (&[(usize, usize)], &[usize]) = if quick { (&[(3584, 3584)], &[1, 2048]) } else { (&medqlora_kernels::bench::SHAPES, &medqlora_kernels::bench::MS) };
    println!("{}", medqlora_kernels::bench::HEADER);
    medqlora_kernels::bench::run(&client, &device, shapes, ms, &map, |r| println!("{}", medqlora_kernels::bench::format_row(r)));
}
