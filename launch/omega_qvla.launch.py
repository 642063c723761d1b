"""Start the omega_qvla_ros policy node on a robot.

    ros2 launch omega_qvla_ros omega_qvla.launch.py pack_path:=/path/to/pack dry_run:=true

Arguments map one to one onto node parameters (a static test checks this);
everything else comes from the parameter YAML (`config_file`).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("omega_qvla_ros")
    args = [
        DeclareLaunchArgument(
            "config_file",
            default_value=os.path.join(share, "config", "aloha_bimanual.yaml"),
            description="parameter YAML for the robot",
        ),
        DeclareLaunchArgument(
            "pack_path",
            default_value=os.path.join(share, "models", "pi05_small_aloha_w4a4"),
            description="model pack directory (default: the shipped Omega-QVLA W4A4 pack)",
        ),
        DeclareLaunchArgument("mode", default_value="policy",
                              description="policy | teleop | shadow"),
        DeclareLaunchArgument("dry_run", default_value="true",
                              description="publish nothing to the controller until enabled"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("namespace", default_value=""),
    ]
    node = Node(
        package="omega_qvla_ros",
        executable="policy_node",
        name="omega_qvla_policy",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("config_file"),
            {
                "pack_path": LaunchConfiguration("pack_path"),
                "mode": LaunchConfiguration("mode"),
                "dry_run": ParameterValue(LaunchConfiguration("dry_run"), value_type=bool),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"),
                                               value_type=bool),
            },
        ],
    )
    return LaunchDescription([*args, node])
