"""ROS-free policy runtime: pack loading, preprocessing, chunk scheduling, safety."""
